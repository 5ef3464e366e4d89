//! Unit tests of leases and the audit ring, on explicit clocks (no sleeping).

use std::time::{Duration, Instant, SystemTime};

use super::*;

fn board() -> (Access, mpsc::UnboundedReceiver<Ended>) {
    Access::new(AccessConfig {
        max_ttl: Duration::from_secs(3600),
        max_label: 20,
        audit_entries: 3,
        ..AccessConfig::default()
    })
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn acquire_refuses_others_until_released() {
    let (a, mut ended) = board();
    assert!(a.check(1000).is_ok(), "nobody holds: everybody may");
    let lease = a.acquire(1000, "lava job 12", HOUR).unwrap();
    assert_eq!((lease.uid, lease.holder.as_str()), (1000, "lava job 12"));
    assert!(a.check(1000).is_ok());
    match a.check(1001) {
        Err(AccessError::Leased(l)) => assert_eq!(l.holder, "lava job 12"),
        other => panic!("{other:?}"),
    }
    assert!(
        a.check(0).is_err(),
        "root is refused too; it may ForceRelease"
    );
    // A non-holder cannot release or renew.
    assert!(matches!(a.release(1001), Err(AccessError::Leased(_))));
    assert!(matches!(a.renew(1001, HOUR), Err(AccessError::Leased(_))));
    // The same uid acquiring again is refused too (it renews instead).
    assert!(matches!(
        a.acquire(1000, "again", HOUR),
        Err(AccessError::Leased(_))
    ));
    a.release(1000).unwrap();
    assert_eq!(ended.try_recv().unwrap().reason, EndReason::Released);
    assert!(a.check(1001).is_ok());
    assert_eq!(a.release(1000), Err(AccessError::NotHeld));
}

#[test]
fn an_expired_lease_refuses_nobody_and_is_reported() {
    let (a, mut ended) = board();
    let now = Instant::now();
    a.acquire_at(1000, "x", Duration::from_secs(10), now, SystemTime::now())
        .unwrap();
    assert!(a.check(1001).is_err());
    // Later than the deadline: the next look ends it.
    assert_eq!(a.current_at(now + Duration::from_secs(10)), None);
    let e = ended.try_recv().unwrap();
    assert_eq!((e.reason, e.lease.uid), (EndReason::Expired, 1000));
    assert!(a.check(1001).is_ok());
    assert_eq!(a.renew(1000, HOUR), Err(AccessError::NotHeld));
    // Another uid may take it now.
    a.acquire(1001, "y", HOUR).unwrap();
}

#[test]
fn renew_moves_the_deadline() {
    let (a, _ended) = board();
    let now = Instant::now();
    let wall = SystemTime::now();
    a.acquire_at(7, "x", Duration::from_secs(10), now, wall)
        .unwrap();
    let later = now + Duration::from_secs(9);
    let l = a
        .renew_at(
            7,
            Duration::from_secs(10),
            later,
            wall + Duration::from_secs(9),
        )
        .unwrap();
    assert_eq!(l.expires, wall + Duration::from_secs(19));
    assert!(a.current_at(now + Duration::from_secs(15)).is_some());
    assert!(a.current_at(now + Duration::from_secs(19)).is_none());
}

#[test]
fn ttl_limits() {
    let (a, _ended) = board();
    assert!(matches!(
        a.acquire(1, "x", Duration::ZERO),
        Err(AccessError::InvalidArgs(m)) if m.contains("ttl 0")
    ));
    assert!(matches!(
        a.acquire(1, "x", HOUR + Duration::from_secs(1)),
        Err(AccessError::InvalidArgs(m)) if m.contains("max_ttl")
    ));
    assert!(matches!(
        a.acquire(1, "x", Duration::from_secs(u64::MAX)),
        Err(AccessError::InvalidArgs(_))
    ));
    a.acquire(1, "x", HOUR).unwrap();
    assert!(matches!(
        a.renew(1, Duration::ZERO),
        Err(AccessError::InvalidArgs(_))
    ));
}

#[test]
fn labels() {
    for bad in ["", "   ", "a\nb", "tab\there", "esc\u{1b}[2J", "\u{7f}"] {
        assert!(
            matches!(check_label(bad, 20), Err(AccessError::InvalidArgs(_))),
            "{bad:?}"
        );
    }
    assert!(check_label(&"x".repeat(20), 20).is_ok());
    assert!(check_label(&"x".repeat(21), 20).is_err());
    assert!(
        check_label(&"é".repeat(20), 20).is_ok(),
        "characters, not bytes"
    );
    assert!(check_label(&"x".repeat(8 << 20), 20).is_err());
    assert!(check_label("bisecting a boot", 20).is_ok());
}

#[test]
fn racing_acquires_have_exactly_one_winner() {
    let (a, _ended) = board();
    let threads: Vec<_> = (0..16)
        .map(|uid| {
            let a = a.clone();
            std::thread::spawn(move || a.acquire(uid, "race", HOUR).is_ok())
        })
        .collect();
    let winners = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1);
}

#[test]
fn force_release_needs_an_admin() {
    let (a, mut ended) = board();
    a.acquire(1000, "x", HOUR).unwrap();
    assert!(matches!(
        a.force_release(false),
        Err(AccessError::NotAdmin(_))
    ));
    a.force_release(true).unwrap();
    assert_eq!(ended.try_recv().unwrap().reason, EndReason::ForceReleased);
    assert_eq!(a.force_release(true), Err(AccessError::NotHeld));
    assert!(is_admin(0, None));
    assert!(!is_admin(65534, None));
    assert!(!is_admin(65534, Some("no-such-group-here")));
}

#[test]
fn audit_ring_is_bounded() {
    let (a, _ended) = board();
    let start = SystemTime::now();
    for i in 0..5 {
        a.record(AuditEntry::new(Some(i), "", "Power.On", "", "", "ok"));
    }
    let h = a.history(start);
    assert_eq!(h.len(), 3, "capacity 3");
    assert_eq!(h[0].uid, Some(2), "oldest dropped first");
    assert!(a.history(SystemTime::now() + HOUR).is_empty());
    assert_eq!(a.audit_bound(), 3 * AuditEntry::MAX_BYTES);
}

#[test]
fn audit_text_is_clipped_and_escaped() {
    let e = AuditEntry::new(None, "", "Console.Send", &"y".repeat(10_000), "", "ok");
    assert!(e.args.len() <= AuditEntry::MAX_TEXT);
    assert_eq!(e.args.capacity(), e.args.len());
    assert!(e.args.ends_with("..."));
    let e = AuditEntry::new(None, &"h".repeat(5000), "Power.On", "", "", "ok");
    assert!(e.holder.len() <= AuditEntry::MAX_TEXT);
    assert_eq!(
        AuditEntry::MAX_BYTES,
        std::mem::size_of::<AuditEntry>() + 1024
    );
    assert_eq!(clip("a\nb", 100), "a\\nb");
    assert_eq!(clip("abcdef", 5), "ab...");
    assert_eq!(clip("abcde", 5), "abcde");
    assert_eq!(clip("ééé", 5), "é...");
}
