//! Micro-benchmark: what does secpool (segregated fit, lock-free free lists)
//! cost against the system allocator for the proxy's pattern — copy a read of
//! game-packet size into a fresh block, free it — on one thread, and with the
//! free on another thread (the I/O thread allocates, the main thread frees)?
//!
//! Run: `cargo bench --bench secpool` (or `make bench`). Prints ns per
//! allocate+copy+free, median (min) of `MICRO_REPS` interleaved runs.

mod common;

use std::thread;

use common::{Contender, compare};
use muta_proxy::secpool::{Secpool, SecpoolConfig};

const OPS: u64 = 1_000_000;
/// Read sizes cycled through: small game messages up to a full read.
const SIZES: [usize; 6] = [24, 64, 200, 700, 1500, 4096];

fn pool() -> &'static Secpool {
    Secpool::new(SecpoolConfig {
        bytes_max: 64 << 20,
        block_size_max: 64 << 10,
        free_blocks_max: 1024,
    })
    .leak()
}

fn main() {
    let src = vec![7u8; 64 << 10];
    let pool = pool();
    println!(
        "| scenario ({OPS} blocks, sizes {SIZES:?}) | secpool | system allocator | malloc / secpool |"
    );
    println!("|---|---|---|---|");
    compare(
        "alloc + copy + free, one thread",
        vec![
            Contender {
                name: "secpool",
                run: Box::new(|| {
                    for i in 0..OPS as usize {
                        let n = SIZES[i % SIZES.len()];
                        let block = pool.secpool_copy(&src[..n]).unwrap();
                        std::hint::black_box(&block);
                    }
                    OPS
                }),
            },
            Contender {
                name: "malloc",
                run: Box::new(|| {
                    for i in 0..OPS as usize {
                        let n = SIZES[i % SIZES.len()];
                        let block = src[..n].to_vec();
                        std::hint::black_box(&block);
                    }
                    OPS
                }),
            },
        ],
    );
    compare(
        "alloc + copy on one thread, free on another",
        vec![
            Contender {
                name: "secpool",
                run: Box::new(|| cross_thread(|n| pool.secpool_copy(&src[..n]).unwrap())),
            },
            Contender {
                name: "malloc",
                run: Box::new(|| cross_thread(|n| src[..n].to_vec())),
            },
        ],
    );
}

/// One thread allocates and sends blocks in batches of 64 through a channel;
/// the other drops them.
fn cross_thread<B: Send>(alloc: impl Fn(usize) -> B + Sync) -> u64 {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<B>>(16);
    thread::scope(|s| {
        s.spawn(|| {
            let mut batch = Vec::with_capacity(64);
            for i in 0..OPS as usize {
                batch.push(alloc(SIZES[i % SIZES.len()]));
                if batch.len() == 64 {
                    tx.send(std::mem::replace(&mut batch, Vec::with_capacity(64)))
                        .unwrap();
                }
            }
            tx.send(batch).unwrap();
            drop(tx);
        });
        for batch in rx.iter() {
            drop(batch);
        }
    });
    OPS
}
