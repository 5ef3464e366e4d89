//! The telnet protocol (RFC 854/857/858), as much as a serial console needs: the server
//! side's opening negotiation (we echo, no go-ahead: telnet switches to character mode),
//! answers to the client's option requests, IAC escaping both ways, and `BREAK`.
//!
//! [`Decoder`] is a byte-at-a-time state machine, so a command split across TCP reads is
//! handled, and stray or garbage commands are consumed without reaching the board. Over a
//! connection its output is never longer than its input (data and answers each at most as
//! long; one read's answers at most 2 bytes longer than the read, for a command split across
//! reads), which lets the front end bound a client's answers by bounding what it reads.

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
    /// The data and breaks in the order they came, without empty data steps; breaks with no
    /// data between them are one break (a line held low twice in a row is held low once:
    /// 2,048 `IAC BRK` in one read are one break, not 2,048 quarter-seconds).
    pub fn input(&self) -> Vec<ToBoard<'_>> {
        let mut steps = Vec::new();
        let mut from = 0;
        for &at in &self.breaks {
            if at > from {
                steps.push(ToBoard::Data(self.data.get(from..at).unwrap_or_default()));
            }
            if steps.last() != Some(&ToBoard::Break) {
                steps.push(ToBoard::Break);
            }
            from = from.max(at);
        }
        if from < self.data.len() {
            steps.push(ToBoard::Data(self.data.get(from..).unwrap_or_default()));
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
    ours: Options,
    theirs: Options,
}

/// Which of the 256 telnet options are on.
#[derive(Debug, Clone, Copy)]
struct Options([bool; 256]);

impl Options {
    fn get(&self, option: u8) -> bool {
        // Every u8 is an index of the array: `get` never misses.
        self.0.get(usize::from(option)).copied().unwrap_or(false)
    }

    fn set(&mut self, option: u8, on: bool) {
        if let Some(slot) = self.0.get_mut(usize::from(option)) {
            *slot = on;
        }
    }
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
            ours: Options([false; 256]),
            theirs: Options([false; 256]),
        };
        d.ours.set(OPT_ECHO, true);
        d.ours.set(OPT_SGA, true);
        d.theirs.set(OPT_SGA, true);
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
        // We do echo and SGA (and binary, harmlessly); everything else we refuse.
        let we_can = matches!(option, OPT_ECHO | OPT_SGA | OPT_BINARY);
        let they_may = matches!(option, OPT_SGA | OPT_BINARY);
        match verb {
            DO if !self.ours.get(option) => {
                self.ours.set(option, we_can);
                reply.extend_from_slice(&[IAC, if we_can { WILL } else { WONT }, option]);
            }
            DONT if self.ours.get(option) => {
                self.ours.set(option, false);
                reply.extend_from_slice(&[IAC, WONT, option]);
            }
            WILL if !self.theirs.get(option) => {
                self.theirs.set(option, they_may);
                reply.extend_from_slice(&[IAC, if they_may { DO } else { DONT }, option]);
            }
            WONT if self.theirs.get(option) => {
                self.theirs.set(option, false);
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
        // Breaks with nothing between them are one.
        let d = Decoded {
            data: b"x".to_vec(),
            breaks: vec![0, 0],
            reply: Vec::new(),
        };
        assert_eq!(d.input(), [ToBoard::Break, ToBoard::Data(b"x")]);
        let d = Decoded {
            data: b"ab".to_vec(),
            breaks: vec![1; 2048],
            reply: Vec::new(),
        };
        assert_eq!(
            d.input(),
            [ToBoard::Data(b"a"), ToBoard::Break, ToBoard::Data(b"b")]
        );
    }

    /// The fuzz target's entry point (console/fuzz.rs) over mutations of a real session, as
    /// a cheap stand-in for `cargo fuzz` in every test run (docs/config.md says how to run
    /// the real fuzzer).
    #[test]
    fn the_fuzz_entry_point_survives_mutated_sessions() {
        let mut seed = vec![3u8];
        seed.extend_from_slice(&[IAC, DO, OPT_ECHO, IAC, WILL, 24, IAC, SB, 24, 0]);
        seed.extend_from_slice(b"VT100");
        seed.extend_from_slice(&[IAC, SE, b'l', b's', b'\r', 0, IAC, IAC, IAC, BRK, IAC, BRK]);
        seed.extend_from_slice(&[b'\r', b'\n', IAC, DONT, OPT_SGA, IAC, WONT, 31, IAC, 241]);
        assert_eq!(crate::console::fuzz::telnet_decoder(&seed), 6);
        let mut mutator = crate::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let dictionary: &[&[u8]] = &[&[IAC], &[DO], &[WILL], &[SB], &[SE], &[BRK], b"\r", &[0]];
        for _ in 0..5000 {
            let mut input = seed.clone();
            mutator.mutate(&mut input, 8, dictionary);
            let _ = crate::console::fuzz::telnet_decoder(&input);
        }
    }
}
