//! `WaitFor`: matching a pattern against the board's live output, bounded in every way one
//! caller could make it expensive.
//!
//! - The pattern: at most [`MAX_PATTERN`] bytes, compiled to at most [`MAX_COMPILED`] (the
//!   automaton, and again the lazy DFA's cache), nested at most [`MAX_NEST`] deep; past that
//!   it is refused before any output is read.
//! - The calls: at most [`PER_CALLER`] at once per caller (a D-Bus unique name) and
//!   [`TOTAL`] in all; the face cancels a call whose caller left the bus.
//! - The work per byte: a lazy DFA is stepped over each byte once, its state carried from
//!   one chunk to the next, so nothing is scanned again when more output comes; only once it
//!   reports that a match ended does a second engine look back over the window for where it
//!   began. A pattern whose DFA keeps outgrowing its cache gives up (named error) rather than
//!   burn a core. Matching runs on the blocking pool, fed from the call's own hub
//!   subscription: a slow pattern never holds up the fan-out, and falls behind by more than
//!   `client_buffer_kib` only to be dropped like a slow client.
//!
//! `\b` and the other word boundaries are taken as ASCII ones: the lazy DFA cannot do
//! Unicode word boundaries on non-ASCII output, and console output is ASCII in practice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::start;
use regex_automata::{Anchored, Input, hybrid, meta};
use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};
use tokio::sync::watch;

use super::ConsoleError;

/// Longest pattern, in bytes.
pub const MAX_PATTERN: usize = 4096;
/// Largest compiled automaton, and the lazy DFA's cache, in bytes.
pub const MAX_COMPILED: usize = 1 << 20;
/// Deepest nesting of groups and repetitions.
pub const MAX_NEST: u32 = 64;
/// Calls at once per caller.
pub const PER_CALLER: usize = 4;
/// Calls at once in all.
pub const TOTAL: usize = 16;
/// Output kept to find where a match began: a match must fit in it.
pub const WINDOW: usize = 64 * 1024;
/// The lazy DFA gives up once it has cleared its cache this many times while making fewer
/// than [`MIN_BYTES_PER_STATE`] bytes of progress per new state: it would cost more per
/// byte than the console is worth.
const MIN_CLEARS: usize = 8;
const MIN_BYTES_PER_STATE: usize = 16;

/// A compiled pattern: the lazy DFA that watches the stream, and the engine that finds the
/// match's start once the DFA saw one end.
pub struct Pattern {
    text: String,
    dfa: hybrid::dfa::DFA,
    find: meta::Regex,
}

impl Pattern {
    /// Parses and compiles `text` within the limits; every refusal is `InvalidArgument`
    /// with the reason in one line.
    pub fn compile(text: &str) -> Result<Pattern, ConsoleError> {
        if text.len() > MAX_PATTERN {
            return Err(ConsoleError::InvalidArgument(format!(
                "the pattern is {} bytes; WaitFor takes at most {MAX_PATTERN}",
                text.len()
            )));
        }
        let hir = regex_syntax::ParserBuilder::new()
            .nest_limit(MAX_NEST)
            .build()
            .parse(text)
            .map_err(|e| {
                ConsoleError::InvalidArgument(format!(
                    "invalid regex {text:?}: {}",
                    syntax_error(&e)
                ))
            })?;
        let hir = ascii_word_boundaries(&hir);
        let too_complex = |e: &dyn std::fmt::Display| {
            ConsoleError::InvalidArgument(format!(
                "the pattern {text:?} is too complex: WaitFor compiles patterns to at most {} KiB ({e})",
                MAX_COMPILED / 1024
            ))
        };
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .nfa_size_limit(Some(MAX_COMPILED))
                    .which_captures(WhichCaptures::None),
            )
            .build_from_hir(&hir)
            .map_err(|e| too_complex(&e))?;
        let dfa = hybrid::dfa::DFA::builder()
            .configure(
                hybrid::dfa::DFA::config()
                    .cache_capacity(MAX_COMPILED)
                    .minimum_cache_clear_count(Some(MIN_CLEARS))
                    .minimum_bytes_per_state(Some(MIN_BYTES_PER_STATE)),
            )
            .build_from_nfa(nfa)
            .map_err(|e| too_complex(&e))?;
        let find = meta::Builder::new()
            .configure(
                meta::Config::new()
                    .nfa_size_limit(Some(MAX_COMPILED))
                    .hybrid_cache_capacity(MAX_COMPILED)
                    .onepass(false)
                    .which_captures(WhichCaptures::Implicit),
            )
            .build_from_hir(&hir)
            .map_err(|e| too_complex(&e))?;
        Ok(Pattern {
            text: text.to_string(),
            dfa,
            find,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A parse error in one line: what, and where in the pattern.
fn syntax_error(e: &regex_syntax::Error) -> String {
    match e {
        regex_syntax::Error::Parse(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        regex_syntax::Error::Translate(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        other => other.to_string().replace('\n', " "),
    }
}

/// `hir` with every Unicode word-boundary assertion made its ASCII counterpart.
fn ascii_word_boundaries(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Look(look) => Hir::look(match look {
            Look::WordUnicode => Look::WordAscii,
            Look::WordUnicodeNegate => Look::WordAsciiNegate,
            Look::WordStartUnicode => Look::WordStartAscii,
            Look::WordEndUnicode => Look::WordEndAscii,
            Look::WordStartHalfUnicode => Look::WordStartHalfAscii,
            Look::WordEndHalfUnicode => Look::WordEndHalfAscii,
            other => *other,
        }),
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            min: r.min,
            max: r.max,
            greedy: r.greedy,
            sub: Box::new(ascii_word_boundaries(&r.sub)),
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            index: c.index,
            name: c.name.clone(),
            sub: Box::new(ascii_word_boundaries(&c.sub)),
        }),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(ascii_word_boundaries).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.iter().map(ascii_word_boundaries).collect())
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) => hir.clone(),
    }
}

/// One call's matching state over the stream of output.
pub struct Matcher {
    pattern: Arc<Pattern>,
    cache: hybrid::dfa::Cache,
    find_cache: meta::Cache,
    state: LazyStateID,
    /// The latest output; `window[..lead]` is the byte before the part a match may start
    /// in (kept for look-behind: `^`, `\b`), `lead` is 0 until the window first slides.
    window: Vec<u8>,
    lead: usize,
}

impl Matcher {
    pub fn new(pattern: Arc<Pattern>) -> Result<Matcher, ConsoleError> {
        let mut cache = pattern.dfa.create_cache();
        let find_cache = pattern.find.create_cache();
        let state = start_state(&pattern.dfa, &mut cache, None)?;
        Ok(Matcher {
            pattern,
            cache,
            find_cache,
            state,
            window: Vec::new(),
            lead: 0,
        })
    }

    /// Takes the next output; returns the match once there is one. Costs one DFA step per
    /// byte, plus a look back over the window when a match ends.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Option<String>, ConsoleError> {
        let from = self.window.len();
        self.window.extend_from_slice(chunk);
        // Progress is recorded for the DFA's efficiency check (MIN_BYTES_PER_STATE); a
        // new start finishes the previous one.
        self.cache.search_start(from);
        let mut at = from;
        while let Some(&byte) = self.window.get(at) {
            self.state = self.step(byte, at)?;
            // Matches are reported one byte late: this state says a match ended at `at`.
            if self.state.is_match() {
                if let Some(found) = self.find(at) {
                    return Ok(Some(found));
                }
                self.restart(at)?;
            }
            at += 1;
        }
        // The end of the output so far is the end of the text: `$` may match here.
        let end = self
            .pattern
            .dfa
            .next_eoi_state(&mut self.cache, self.state)
            .map_err(|_| too_expensive(&self.pattern))?;
        if end.is_match() {
            if let Some(found) = self.find(at) {
                return Ok(Some(found));
            }
            self.restart(at)?;
        }
        self.slide();
        Ok(None)
    }

    fn step(&mut self, byte: u8, at: usize) -> Result<LazyStateID, ConsoleError> {
        self.cache.search_update(at);
        self.pattern
            .dfa
            .next_state(&mut self.cache, self.state, byte)
            .map_err(|_| too_expensive(&self.pattern))
    }

    /// The leftmost match in the window that ends at or before `end`; `None` when the match
    /// the DFA saw began before the window.
    fn find(&mut self, end: usize) -> Option<String> {
        let end = end.min(self.window.len());
        let input = Input::new(&self.window).range(self.lead.min(end)..end);
        let m = self
            .pattern
            .find
            .search_with(&mut self.find_cache, &input)?;
        let text = String::from_utf8_lossy(self.window.get(m.range())?);
        // A D-Bus string may not hold NUL (the bus would drop the connection).
        Some(text.replace('\0', "\u{fffd}"))
    }

    /// The DFA saw a match that began before the window: starts it again at the window's
    /// start and walks it up to `at` (ignoring matches: `find` saw none), so it only reports
    /// matches that begin inside the window. Costs one pass over the window, at most once
    /// per slide of the window.
    fn restart(&mut self, at: usize) -> Result<(), ConsoleError> {
        let before = self
            .lead
            .checked_sub(1)
            .and_then(|i| self.window.get(i).copied());
        self.state = start_state(&self.pattern.dfa, &mut self.cache, before)?;
        // (The cache's progress counts the pass again: it is work done for this output.)
        self.cache.search_start(self.lead);
        for i in self.lead..=at {
            if let Some(&byte) = self.window.get(i) {
                self.state = self.step(byte, i)?;
            }
        }
        Ok(())
    }

    /// Keeps the window between [`WINDOW`] and twice that (plus the byte before it).
    fn slide(&mut self) {
        if self.window.len() > 2 * WINDOW + 1 {
            let cut = self.window.len() - WINDOW - 1;
            self.window.drain(..cut);
            self.lead = 1;
        }
    }
}

fn start_state(
    dfa: &hybrid::dfa::DFA,
    cache: &mut hybrid::dfa::Cache,
    before: Option<u8>,
) -> Result<LazyStateID, ConsoleError> {
    let config = start::Config::new()
        .anchored(Anchored::No)
        .look_behind(before);
    dfa.start_state(cache, &config)
        .map_err(|e| ConsoleError::InvalidArgument(format!("cannot start the pattern: {e}")))
}

fn too_expensive(pattern: &Pattern) -> ConsoleError {
    ConsoleError::Limit(format!(
        "the pattern {:?} is too expensive on this output: its automaton kept outgrowing \
         its {} KiB cache",
        pattern.text,
        MAX_COMPILED / 1024
    ))
}

/// Who is waiting: calls per caller and in all, and the count for the `Waiters` property.
pub struct Waiters {
    per_caller: Mutex<HashMap<String, usize>>,
    count: watch::Sender<u32>,
}

/// A call's place among the waiters, given back when dropped (the call ended, timed out, or
/// was cancelled because its caller left).
pub struct WaiterSlot {
    waiters: Arc<Waiters>,
    caller: String,
}

impl Waiters {
    pub fn new() -> Arc<Waiters> {
        Arc::new(Waiters {
            per_caller: Mutex::new(HashMap::new()),
            count: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every change under the lock is one insert or remove: nothing half-done to see.
        self.per_caller.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self) -> watch::Receiver<u32> {
        self.count.subscribe()
    }

    pub fn enter(self: &Arc<Self>, caller: &str) -> Result<WaiterSlot, ConsoleError> {
        let mut map = self.lock();
        let total: usize = map.values().sum();
        if total >= TOTAL {
            return Err(ConsoleError::Busy(format!(
                "{total} WaitFor calls are running on this board, the most it takes at once; \
                 try again when one has ended"
            )));
        }
        let mine = map.entry(caller.to_string()).or_insert(0);
        if *mine >= PER_CALLER {
            return Err(ConsoleError::Limit(format!(
                "{caller} already has {PER_CALLER} WaitFor calls running, the most one caller \
                 may have at once"
            )));
        }
        *mine += 1;
        self.count
            .send_replace(u32::try_from(total + 1).unwrap_or(u32::MAX));
        Ok(WaiterSlot {
            waiters: self.clone(),
            caller: caller.to_string(),
        })
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(n) = map.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.caller);
            }
        }
        let total: usize = map.values().sum();
        self.waiters
            .count
            .send_replace(u32::try_from(total).unwrap_or(u32::MAX));
    }
}

#[cfg(test)]
mod tests;
