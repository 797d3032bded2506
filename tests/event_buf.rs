//! Tests of the event buffer (thesis §3.4.2), in the manner of
//! crossbeam-channel's `tests/array.rs`: smoke, capacity, FIFO across threads,
//! blocking while full, chunked pushes, timeouts, close waking every waiter,
//! many producers with no loss and no duplication over a million events, and
//! every event dropped exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use muta_proxy::com::FOREVER;
use muta_proxy::event_buf::{Closed, EventBuf, TryPushError};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn smoke() {
    let buf = EventBuf::new(4);
    buf.event_push([7]).unwrap();
    let mut out = Vec::new();
    assert_eq!(buf.event_wait(&mut out, 10, 0), Ok(1));
    assert_eq!(out, [7]);
    assert_eq!(buf.event_wait(&mut out, 10, 0), Ok(0));
}

#[test]
fn capacity_and_len() {
    let buf = EventBuf::new(3);
    assert_eq!(buf.capacity(), 3);
    assert!(buf.is_empty());
    buf.event_push([1, 2, 3]).unwrap();
    assert_eq!(buf.len(), 3);
    assert_eq!(buf.try_push(4), Err(TryPushError::Full(4)));
    let mut out = Vec::new();
    assert_eq!(buf.event_wait(&mut out, 2, 0), Ok(2));
    assert_eq!(buf.len(), 1);
    assert_eq!(out, [1, 2]);
}

#[test]
fn wait_returns_at_most_max_in_fifo_order() {
    let buf = EventBuf::new(100);
    buf.event_push(0..50).unwrap();
    let mut out = Vec::new();
    while out.len() < 50 {
        let n = buf.event_wait(&mut out, 7, 0).unwrap();
        assert!((1..=7).contains(&n));
    }
    assert_eq!(out, (0..50).collect::<Vec<_>>());
}

#[test]
fn wait_times_out_when_empty() {
    let buf = EventBuf::<u32>::new(1);
    let mut out = Vec::new();
    let start = Instant::now();
    assert_eq!(buf.event_wait(&mut out, 1, 50), Ok(0));
    let waited = start.elapsed();
    assert!(waited >= ms(50), "returned after {waited:?}");
    assert!(waited < ms(2000), "slept far past the timeout: {waited:?}");
}

#[test]
fn wait_wakes_when_an_event_arrives() {
    let buf = EventBuf::new(1);
    let mut out = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(ms(50));
            buf.event_push([42]).unwrap();
        });
        // A long timeout: the push, not the timeout, must end the wait.
        assert_eq!(buf.event_wait(&mut out, 1, 10_000), Ok(1));
    });
    assert_eq!(out, [42]);
}

#[test]
fn push_blocks_while_full_until_the_consumer_makes_space() {
    let buf = EventBuf::new(2);
    buf.event_push([1, 2]).unwrap();
    let pushed = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            buf.event_push([3]).unwrap();
            pushed.store(true, Ordering::SeqCst);
        });
        thread::sleep(ms(100));
        assert!(
            !pushed.load(Ordering::SeqCst),
            "push into a full buffer did not block"
        );
        let mut out = Vec::new();
        assert_eq!(buf.event_wait(&mut out, 1, 0), Ok(1));
        // The producer now gets its slot.
        let start = Instant::now();
        while !pushed.load(Ordering::SeqCst) {
            assert!(start.elapsed() < ms(5000), "producer not woken");
            thread::sleep(ms(1));
        }
        out.clear();
        assert_eq!(buf.event_wait(&mut out, 10, 0), Ok(2));
        assert_eq!(out, [2, 3]);
    });
}

#[test]
fn push_of_more_than_capacity_goes_in_chunks() {
    let buf = EventBuf::new(4);
    let mut out = Vec::new();
    thread::scope(|s| {
        s.spawn(|| buf.event_push(0..1000).unwrap());
        while out.len() < 1000 {
            buf.event_wait(&mut out, 1000, FOREVER).unwrap();
            assert!(buf.len() <= 4);
        }
    });
    assert_eq!(out, (0..1000).collect::<Vec<_>>());
}

#[test]
fn close_wakes_a_blocked_producer() {
    let buf = EventBuf::new(1);
    buf.event_push([1]).unwrap();
    thread::scope(|s| {
        let producer = s.spawn(|| buf.event_push([2]));
        thread::sleep(ms(50));
        buf.close();
        assert_eq!(producer.join().unwrap(), Err(Closed));
    });
}

#[test]
fn close_wakes_a_waiting_consumer_after_the_last_event() {
    let buf = EventBuf::new(4);
    buf.event_push([1, 2]).unwrap();
    let mut out = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(ms(50));
            buf.close();
        });
        // What was pushed before close is still delivered...
        assert_eq!(buf.event_wait(&mut out, 10, FOREVER), Ok(2));
        // ...then a forever-wait ends with Closed instead of hanging.
        assert_eq!(buf.event_wait(&mut out, 10, FOREVER), Err(Closed));
    });
    assert_eq!(buf.event_push([3]), Err(Closed));
    assert_eq!(buf.try_push(3), Err(TryPushError::Closed(3)));
}

#[test]
fn spsc_fifo_across_threads() {
    const COUNT: u64 = 200_000;
    let buf = EventBuf::new(64);
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..COUNT {
                buf.event_push([i]).unwrap();
            }
        });
        let mut out = Vec::new();
        let mut next = 0;
        while next < COUNT {
            out.clear();
            buf.event_wait(&mut out, 16, FOREVER).unwrap();
            for &v in &out {
                assert_eq!(v, next, "events out of order");
                next += 1;
            }
        }
    });
}

/// Four producers, a million events: each arrives exactly once, and each
/// producer's events arrive in the order it pushed them.
#[test]
fn mpsc_million_events_no_loss_no_duplication() {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 250_000;
    let buf = EventBuf::new(256);
    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let buf = &buf;
            s.spawn(move || {
                // Mixed batch sizes: single events and batches over capacity.
                let mut i = 0;
                while i < PER_PRODUCER {
                    let n = [1, 3, 64, 300][(i % 4) as usize].min(PER_PRODUCER - i);
                    buf.event_push((i..i + n).map(|seq| (p, seq))).unwrap();
                    i += n;
                }
            });
        }
        let mut next = [0u64; PRODUCERS as usize];
        let mut out = Vec::with_capacity(128);
        let mut total = 0;
        while total < PRODUCERS * PER_PRODUCER {
            out.clear();
            total += buf.event_wait(&mut out, 128, FOREVER).unwrap() as u64;
            for &(p, seq) in &out {
                assert_eq!(
                    seq, next[p as usize],
                    "producer {p}: lost, duplicated or reordered"
                );
                next[p as usize] += 1;
            }
        }
        assert_eq!(next, [PER_PRODUCER; PRODUCERS as usize]);
        assert_eq!(buf.event_wait(&mut out, 1, 0), Ok(0));
    });
}

/// Counts drops, to prove every event is dropped exactly once: delivered and
/// dropped by the consumer, or dropped by the buffer itself.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_event_is_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let buf = EventBuf::new(8);
    buf.event_push((0..8).map(|_| Tracked(drops.clone())))
        .unwrap();
    let mut out = Vec::new();
    buf.event_wait(&mut out, 3, 0).unwrap();
    drop(out);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    // Events refused by a closed buffer are dropped by the push.
    buf.close();
    let refused: Vec<Tracked> = (0..4).map(|_| Tracked(drops.clone())).collect();
    assert_eq!(buf.event_push(refused), Err(Closed));
    assert_eq!(drops.load(Ordering::SeqCst), 7);
    // The five still inside go with the buffer.
    drop(buf);
    assert_eq!(drops.load(Ordering::SeqCst), 12);
}
