//! Micro-benchmark: what does the thesis's event buffer (ring + mutex + two
//! condvars, `event_push` / `event_wait`) cost against
//! `crossbeam_channel::bounded` of the same capacity? Measured one event at a
//! time and in batches, with one producer and with two (the proxy's shape:
//! the client and shard threads feed the main thread).
//!
//! Run: `cargo bench --bench event_buf` (or `make bench`). Events are 48 bytes,
//! the size of `com::Event`. Prints ns per event, median (min) of
//! `MICRO_REPS` interleaved runs.

mod common;

use std::thread;

use common::{Contender, compare};
use muta_proxy::com::FOREVER;
use muta_proxy::event_buf::EventBuf;

const CAPACITY: usize = 1024;
const EVENTS: u64 = 400_000;
const BATCH: usize = 64;

type Ev = [u64; 6];

fn ev(i: u64) -> Ev {
    [i, 0, 0, 0, 0, 0]
}

/// `producers` threads push `EVENTS` in total through an EventBuf, `batch` at a
/// time; the consumer takes up to `batch` per wait.
fn event_buf(producers: u64, batch: usize) -> u64 {
    let buf = EventBuf::<Ev>::new(CAPACITY);
    let per_producer = EVENTS / producers;
    thread::scope(|s| {
        for _ in 0..producers {
            s.spawn(|| {
                let mut pending = Vec::with_capacity(batch);
                for i in 0..per_producer {
                    pending.push(ev(i));
                    if pending.len() == batch {
                        buf.event_push(pending.drain(..)).unwrap();
                    }
                }
                buf.event_push(pending.drain(..)).unwrap();
            });
        }
        let mut out = Vec::with_capacity(batch);
        let mut got = 0;
        let mut checksum = 0u64;
        while got < per_producer * producers {
            out.clear();
            got += buf.event_wait(&mut out, batch, FOREVER).unwrap() as u64;
            checksum = checksum.wrapping_add(out.iter().map(|e| e[0]).sum::<u64>());
        }
        std::hint::black_box(checksum);
    });
    EVENTS
}

/// The same through crossbeam: it has no batch send, so a "batch" is a loop of
/// sends and the consumer drains with `try_iter` after a blocking `recv`.
fn crossbeam(producers: u64, batch: usize) -> u64 {
    let (tx, rx) = crossbeam_channel::bounded::<Ev>(CAPACITY);
    let per_producer = EVENTS / producers;
    thread::scope(|s| {
        for _ in 0..producers {
            let tx = tx.clone();
            s.spawn(move || {
                for i in 0..per_producer {
                    tx.send(ev(i)).unwrap();
                }
            });
        }
        let mut got = 0;
        let mut checksum = 0u64;
        while got < per_producer * producers {
            let first = rx.recv().unwrap();
            checksum = checksum.wrapping_add(first[0]);
            got += 1;
            if batch > 1 {
                for e in rx.try_iter().take(batch - 1) {
                    checksum = checksum.wrapping_add(e[0]);
                    got += 1;
                }
            }
        }
        std::hint::black_box(checksum);
    });
    EVENTS
}

fn main() {
    println!(
        "| scenario (capacity {CAPACITY}, {EVENTS} events) | event_buf | crossbeam bounded | crossbeam / event_buf |"
    );
    println!("|---|---|---|---|");
    for (producers, batch, label) in [
        (1, 1, "1 producer, one event at a time"),
        (1, BATCH, "1 producer, batches of 64"),
        (2, 1, "2 producers, one event at a time"),
        (2, BATCH, "2 producers, batches of 64"),
    ] {
        compare(
            label,
            vec![
                Contender {
                    name: "event_buf",
                    run: Box::new(move || event_buf(producers, batch)),
                },
                Contender {
                    name: "crossbeam",
                    run: Box::new(move || crossbeam(producers, batch)),
                },
            ],
        );
    }
}
