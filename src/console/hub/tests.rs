//! Tests of `hub`.

use super::*;

#[tokio::test]
async fn every_subscriber_gets_every_chunk_in_order() {
    let hub = Hub::new(1 << 20, ConsoleInput::All);
    let mut a = hub.subscribe(true, "a");
    let mut b = hub.subscribe(true, "b");
    assert_eq!(*hub.clients().borrow(), 2);
    for i in 0..100u8 {
        hub.publish(&Bytes::from(vec![i; 10]));
    }
    for i in 0..100u8 {
        assert_eq!(a.recv().await.unwrap()[0], i);
        assert_eq!(b.recv().await.unwrap()[0], i);
    }
    drop(a);
    assert_eq!(*hub.clients().borrow(), 1);
}

#[tokio::test]
async fn a_client_too_far_behind_is_dropped_and_others_continue() {
    let hub = Hub::new(100, ConsoleInput::All);
    let mut slow = hub.subscribe(true, "slow");
    let mut fast = hub.subscribe(true, "fast");
    for _ in 0..20 {
        hub.publish(&Bytes::from_static(b"0123456789"));
        assert!(fast.recv().await.is_some());
    }
    assert_eq!(*hub.clients().borrow(), 1);
    // The slow one reads what it had, then learns it was dropped.
    let mut got = 0;
    while let Some(c) = slow.recv().await {
        got += c.len();
    }
    assert!(got <= 100, "{got}");
}

#[tokio::test]
async fn input_first_lets_only_the_oldest_client_write() {
    let hub = Hub::new(1 << 20, ConsoleInput::First);
    let _internal = hub.subscribe(false, "waitfor");
    let a = hub.subscribe(true, "a");
    let b = hub.subscribe(true, "b");
    assert!(hub.may_write(a.id) && !hub.may_write(b.id));
    drop(a);
    assert!(hub.may_write(b.id));
}

/// A `WaitFor` (not counted as a client) whose matching lags is dropped like a slow client:
/// nothing queues for it without bound.
#[tokio::test]
async fn an_internal_reader_too_far_behind_is_dropped_too() {
    let hub = Hub::new(100, ConsoleInput::All);
    let mut waiter = hub.subscribe(false, "WaitFor of :1.7");
    for _ in 0..20 {
        hub.publish(&Bytes::from_static(b"0123456789"));
    }
    let mut got = 0;
    while let Some(c) = waiter.recv().await {
        got += c.len();
    }
    assert!(got <= 100, "{got}");
    assert_eq!(*hub.clients().borrow(), 0);
}
