use super::*;

fn matcher(pattern: &str) -> Matcher {
    Matcher::new(Arc::new(Pattern::compile(pattern).unwrap())).unwrap()
}

fn invalid(pattern: &str) -> String {
    match Pattern::compile(pattern) {
        Err(ConsoleError::InvalidArgument(m)) => m,
        Err(other) => panic!("{pattern:?}: {other:?}"),
        Ok(_) => panic!("{pattern:?} compiled"),
    }
}

#[test]
fn a_match_across_chunks_is_found_and_is_the_leftmost() {
    let mut m = matcher(r"login: *$|(\w+) login:");
    assert_eq!(m.feed(b"booting\r\nrpi4 log").unwrap(), None);
    assert_eq!(m.feed(b"in: ").unwrap().as_deref(), Some("rpi4 login:"));
}

#[test]
fn dollar_is_the_end_of_the_output_so_far() {
    let mut m = matcher(r"# $");
    assert_eq!(m.feed(b"a # b\n").unwrap(), None);
    assert_eq!(m.feed(b"root@board:~# ").unwrap().as_deref(), Some("# "));
}

#[test]
fn word_boundaries_are_ascii_and_survive_non_ascii_output() {
    let mut m = matcher(r"\bfoo\b");
    assert_eq!(m.feed("é afoob ü".as_bytes()).unwrap(), None);
    assert_eq!(m.feed("→ foo.".as_bytes()).unwrap().as_deref(), Some("foo"));
}

#[test]
fn a_nul_in_the_match_never_reaches_d_bus() {
    let mut m = matcher(r"(?s)a.b");
    assert_eq!(m.feed(b"xa\0b").unwrap().as_deref(), Some("a\u{fffd}b"));
}

#[test]
fn a_match_that_began_before_the_window_is_dropped_and_later_ones_found() {
    let mut m = matcher(r"(?s)A.*B");
    assert_eq!(m.feed(b"A").unwrap(), None);
    for _ in 0..8 {
        assert_eq!(m.feed(&[b'x'; 32 * 1024]).unwrap(), None);
    }
    // The DFA sees `A.*B` end here, but its A left the window long ago.
    assert_eq!(m.feed(b"B").unwrap(), None);
    assert_eq!(m.feed(b"yyA12B").unwrap().as_deref(), Some("A12B"));
}

#[test]
fn the_window_stays_bounded_and_a_byte_costs_one_step() {
    let mut m = matcher(r"never(\w+)here");
    // A byte at a time, far past the window: re-scanning the window per chunk would take
    // minutes here (2^20 chunks of up to 128 KiB).
    for i in 0..(1usize << 20) {
        assert_eq!(m.feed(&[b'a' + (i % 26) as u8]).unwrap(), None);
        assert!(m.window.len() <= 2 * WINDOW + 1);
    }
    assert_eq!(
        m.feed(b" neverever here neverAhere").unwrap().as_deref(),
        Some("neverAhere")
    );
}

#[test]
fn oversized_and_bad_patterns_are_refused_with_the_reason() {
    let long = "a".repeat(MAX_PATTERN + 1);
    assert!(
        invalid(&long).contains("at most 4096"),
        "{}",
        invalid(&long)
    );
    let m = invalid(r"\w{1000}{1000}");
    assert!(m.contains("too complex"), "{m}");
    let m = invalid(&format!("{}a{}", "(".repeat(100), ")".repeat(100)));
    assert!(m.starts_with("invalid regex") && m.contains("nest"), "{m}");
    let m = invalid("([");
    assert!(
        m.starts_with("invalid regex \"([\": ") && !m.contains('\n'),
        "{m}"
    );
    // Common patterns fit comfortably.
    for ok in [
        r"(\w+) login: $",
        r"rpi4-01 login: ",
        r"(?i-u)kernel panic|Oops:",
        r"\d+\.\d+",
    ] {
        Pattern::compile(ok).unwrap();
    }
}

#[test]
fn a_pattern_whose_automaton_explodes_gives_up_by_name() {
    // The classic exponential DFA: the 20th byte from the end is a 1.
    let mut m = matcher(r"1[01]{20}$x");
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut gave_up = None;
    for _ in 0..64 {
        let chunk: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'0' + (x & 1) as u8
            })
            .collect();
        match m.feed(&chunk) {
            Ok(None) => {}
            Ok(Some(s)) => panic!("matched {s:?}"),
            Err(e) => {
                gave_up = Some(e);
                break;
            }
        }
    }
    match gave_up {
        Some(ConsoleError::Limit(m)) => assert!(m.contains("too expensive"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_are_limited_per_caller_and_in_all() {
    let w = Waiters::new();
    let count = w.count();
    let mine: Vec<_> = (0..PER_CALLER).map(|_| w.enter(":1.5").unwrap()).collect();
    assert!(matches!(w.enter(":1.5"), Err(ConsoleError::Limit(_))));
    let mut others: Vec<_> = (0..TOTAL - PER_CALLER)
        .map(|i| w.enter(&format!(":2.{}", i / PER_CALLER)).unwrap())
        .collect();
    assert_eq!(*count.borrow(), TOTAL as u32);
    assert!(matches!(w.enter(":9.9"), Err(ConsoleError::Busy(_))));
    others.pop();
    assert!(w.enter(":9.9").is_ok(), "a place was given back");
    drop(mine);
    drop(others);
    assert_eq!(*count.borrow(), 0);
    assert!(w.per_caller.lock().unwrap().is_empty());
}
