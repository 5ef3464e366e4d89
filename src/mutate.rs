//! A small deterministic mutator for the fuzz entry points' runs inside the test suite: the
//! cheap stand-in for `cargo fuzz` that every test run gets (fuzz/ has the real targets).
//! One xorshift generator with a fixed seed, so a failure repeats exactly.

/// Mutates byte strings: byte set, bit flip, truncation, a token of the parser's dictionary,
/// or eight random bytes inserted.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// `seed` must not be zero (xorshift would stay at zero).
    pub fn new(seed: u64) -> Mutator {
        Mutator { state: seed.max(1) }
    }

    /// The next pseudo-random number.
    pub fn number(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Applies 1 to `max_steps` mutations to `input`; tokens come from `dictionary` (an
    /// empty one means random bytes instead).
    pub fn mutate(&mut self, input: &mut Vec<u8>, max_steps: u64, dictionary: &[&[u8]]) {
        for _ in 0..(self.number() % max_steps.max(1) + 1) {
            let at = (self.number() as usize) % input.len().max(1);
            let at = at.min(input.len());
            match self.number() % 5 {
                0 => {
                    let b = self.number() as u8;
                    if let Some(slot) = input.get_mut(at) {
                        *slot = b;
                    }
                }
                1 => {
                    let bit = 1 << (self.number() % 8);
                    if let Some(slot) = input.get_mut(at) {
                        *slot ^= bit;
                    }
                }
                2 => input.truncate(at.max(1)),
                3 if !dictionary.is_empty() => {
                    let i = (self.number() as usize) % dictionary.len();
                    let token = dictionary.get(i).copied().unwrap_or_default();
                    input.splice(at..at, token.iter().copied());
                }
                _ => {
                    let bytes = self.number().to_be_bytes();
                    input.splice(at..at, bytes);
                }
            }
        }
    }
}
