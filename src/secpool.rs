//! secpool (thesis §3.4.4): the segregated-fit pool that carries variable-size
//! event data (network reads) from the I/O threads to the main thread.
//!
//! As in the thesis, every request is rounded up to a power of two and the
//! exponent, found from the highest set bit in O(1), indexes an array of free
//! lists, one per size class. The smallest class is 16 bytes
//! ([`SECPOOL_BLOCK_SIZE_MIN`]); the largest is configured
//! (`runtime.secpool_block_size_max` is derived from the read sizes).
//!
//! Port decisions:
//! - The free lists are lock-free bounded queues (`crossbeam_channel`), not a
//!   mutex-protected list, so the per-packet path (an I/O thread allocates, the
//!   main thread frees) takes no lock beyond the event buffer's.
//! - A cap on the bytes the pool holds (`runtime.secpool_bytes_max`). A new
//!   block that would pass it first makes idle blocks of any class go back to
//!   the system, so the cap bounds the blocks *in use*; only when those alone
//!   would pass it does [`Secpool::secpool_malloc`] fail, cleanly, with
//!   [`SecpoolError::Exhausted`]. The thesis relies on the blocking event
//!   buffer to bound memory; the config check makes that explicit by refusing
//!   a cap below what the event buffer can hold in flight
//!   (`Config::secpool_bytes_needed`).
//! - A block comes back through the [`PoolBuf`] handle's `Drop`, on whatever
//!   thread drops it, so "the handler that consumes an event frees its block"
//!   needs no call to remember.
//! - A class's free list holds at most `runtime.secpool_free_blocks_max`
//!   blocks; a block freed into a full list goes back to the system allocator.
//!   In the steady state blocks only cycle between the pool and its users.
//!
//! Blocks are not zeroed on reuse: a [`PoolBuf`] exposes only the bytes written
//! into it (`len`), never the stale tail.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// log2 of the smallest block.
pub const SECPOOL_CLASS_MIN_LOG2: u32 = 4;
/// The smallest block: requests of 0 to 16 bytes get one.
pub const SECPOOL_BLOCK_SIZE_MIN: usize = 1 << SECPOOL_CLASS_MIN_LOG2;

/// How a pool is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecpoolConfig {
    /// Most bytes in blocks that exist at once, in use or free.
    pub bytes_max: usize,
    /// The largest block; a power of two, at least [`SECPOOL_BLOCK_SIZE_MIN`].
    pub block_size_max: usize,
    /// Most free blocks kept per class.
    pub free_blocks_max: usize,
}

/// Why an allocation failed. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecpoolError {
    /// The request is larger than the largest class.
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// The largest block.
        block_size_max: usize,
    },
    /// Creating another block would take the pool past `bytes_max`.
    Exhausted {
        /// Bytes asked for.
        requested: usize,
        /// The cap.
        bytes_max: usize,
    },
}

impl fmt::Display for SecpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SecpoolError::TooLarge {
                requested,
                block_size_max,
            } => write!(
                f,
                "secpool: {requested} bytes is larger than the largest block ({block_size_max})"
            ),
            SecpoolError::Exhausted {
                requested,
                bytes_max,
            } => write!(
                f,
                "secpool: no block for {requested} bytes within the {bytes_max}-byte cap"
            ),
        }
    }
}

impl std::error::Error for SecpoolError {}

/// One size class: blocks of exactly `block_size` bytes.
struct SizeClass {
    block_size: usize,
    free_tx: Sender<Box<[u8]>>,
    free_rx: Receiver<Box<[u8]>>,
    allocs: AtomicU64,
    frees: AtomicU64,
    failures: AtomicU64,
    blocks_created: AtomicU64,
    blocks_released: AtomicU64,
    /// Free blocks at the last [`Secpool::trim_idle`].
    free_at_last_trim: AtomicUsize,
}

/// Free blocks per class that [`Secpool::trim_idle`] always keeps.
pub const SECPOOL_IDLE_FLOOR: usize = 32;

/// Counters of one size class, read by [`Secpool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per block.
    pub block_size: usize,
    /// Successful `secpool_malloc` calls served by this class.
    pub allocs: u64,
    /// Blocks returned to this class.
    pub frees: u64,
    /// Requests of this class that failed with `Exhausted`.
    pub failures: u64,
    /// Blocks created from the system allocator.
    pub blocks_created: u64,
    /// Blocks given back to the system allocator (free list full).
    pub blocks_released: u64,
    /// Blocks handed out and not yet returned.
    pub blocks_in_use: u64,
    /// Blocks waiting on the free list.
    pub blocks_free: u64,
}

/// The pool (thesis `secpool_t`). The daemon has one, leaked to `'static` at
/// start-up (the thesis's "single global secpool instance"), so a [`PoolBuf`]
/// carries a plain reference rather than a reference count.
pub struct Secpool {
    classes: Box<[SizeClass]>,
    bytes_max: usize,
    block_size_max: usize,
    /// Bytes in blocks that exist (in use or free). Never above `bytes_max`.
    bytes_held: AtomicUsize,
}

impl fmt::Debug for Secpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secpool")
            .field("classes", &self.classes.len())
            .field("bytes_held", &self.bytes_held())
            .field("bytes_max", &self.bytes_max)
            .finish()
    }
}

/// Size-class index of a request (O(1)): requests up to 16 bytes are class 0;
/// otherwise the class is `ceil(log2(n)) - 4`, where `ceil(log2(n))` is the
/// position of the highest set bit of `n - 1`, plus one.
#[inline]
pub fn secpool_class_index(num_bytes: usize) -> usize {
    if num_bytes <= SECPOOL_BLOCK_SIZE_MIN {
        return 0;
    }
    let log2_ceil = usize::BITS - (num_bytes - 1).leading_zeros();
    (log2_ceil - SECPOOL_CLASS_MIN_LOG2) as usize
}

impl Secpool {
    /// Creates a pool (thesis `secpool_init`). No blocks exist until asked for.
    ///
    /// # Panics
    /// If `block_size_max` is not a power of two of at least 16 bytes, or
    /// `free_blocks_max` is 0; `config` validates both before this is called.
    pub fn new(config: SecpoolConfig) -> Secpool {
        assert!(config.block_size_max.is_power_of_two());
        assert!(config.block_size_max >= SECPOOL_BLOCK_SIZE_MIN);
        assert!(config.free_blocks_max > 0);
        let n_classes = secpool_class_index(config.block_size_max) + 1;
        let classes = (0..n_classes)
            .map(|index| {
                let block_size = SECPOOL_BLOCK_SIZE_MIN << index;
                // A class never holds more free blocks than the cap allows to exist.
                let slots = config
                    .free_blocks_max
                    .min(config.bytes_max / block_size)
                    .max(1);
                let (free_tx, free_rx) = crossbeam_channel::bounded(slots);
                SizeClass {
                    block_size,
                    free_tx,
                    free_rx,
                    allocs: AtomicU64::new(0),
                    frees: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    blocks_created: AtomicU64::new(0),
                    blocks_released: AtomicU64::new(0),
                    free_at_last_trim: AtomicUsize::new(0),
                }
            })
            .collect();
        Secpool {
            classes,
            bytes_max: config.bytes_max,
            block_size_max: config.block_size_max,
            bytes_held: AtomicUsize::new(0),
        }
    }

    /// Moves the pool to the heap for the life of the process and returns the
    /// `'static` reference every [`PoolBuf`] holds.
    pub fn leak(self) -> &'static Secpool {
        Box::leak(Box::new(self))
    }

    /// Allocates a block of at least `num_bytes` (thesis `secpool_malloc`). The
    /// returned handle has length 0 and capacity of the class's block size.
    pub fn secpool_malloc(&'static self, num_bytes: usize) -> Result<PoolBuf, SecpoolError> {
        if num_bytes > self.block_size_max {
            return Err(SecpoolError::TooLarge {
                requested: num_bytes,
                block_size_max: self.block_size_max,
            });
        }
        let class = &self.classes[secpool_class_index(num_bytes)];
        let block = match class.free_rx.try_recv() {
            Ok(block) => block,
            Err(_) => {
                // Idle blocks of other classes count against the cap too; give
                // them back to the system until the new block fits, so the cap
                // bounds the blocks in use, not what traffic happened to leave
                // on the free lists.
                while !self.reserve(class.block_size) {
                    if !self.release_idle_block() {
                        class.failures.fetch_add(1, Relaxed);
                        return Err(SecpoolError::Exhausted {
                            requested: num_bytes,
                            bytes_max: self.bytes_max,
                        });
                    }
                }
                class.blocks_created.fetch_add(1, Relaxed);
                vec![0u8; class.block_size].into_boxed_slice()
            }
        };
        debug_assert_eq!(block.len(), class.block_size);
        class.allocs.fetch_add(1, Relaxed);
        Ok(PoolBuf {
            block,
            len: 0,
            pool: self,
        })
    }

    /// Allocates a block and copies `bytes` into it.
    pub fn secpool_copy(&'static self, bytes: &[u8]) -> Result<PoolBuf, SecpoolError> {
        let mut buf = self.secpool_malloc(bytes.len())?;
        buf.block[..bytes.len()].copy_from_slice(bytes);
        buf.len = bytes.len();
        Ok(buf)
    }

    /// Returns a block to its class (thesis `secpool_free`); called by
    /// [`PoolBuf`]'s `Drop`.
    fn secpool_free(&self, block: Box<[u8]>) {
        let size = block.len();
        debug_assert!(size.is_power_of_two() && size >= SECPOOL_BLOCK_SIZE_MIN);
        let class = &self.classes[secpool_class_index(size)];
        debug_assert_eq!(class.block_size, size, "a block returns to its own class");
        class.frees.fetch_add(1, Relaxed);
        match class.free_tx.try_send(block) {
            Ok(()) => {}
            Err(TrySendError::Full(block)) => {
                drop(block);
                class.blocks_released.fetch_add(1, Relaxed);
                self.bytes_held.fetch_sub(size, Relaxed);
            }
            // The pool owns both ends of the channel, so it cannot be
            // disconnected while `self` is alive.
            Err(TrySendError::Disconnected(_)) => unreachable!("secpool free list disconnected"),
        }
    }

    /// Gives back to the system free blocks beyond [`SECPOOL_IDLE_FLOOR`]
    /// per class that look idle: at least that many were on the free list at
    /// this call and at the last one (a second before: the main loop calls
    /// it at its tick). After a burst (a flood of reads waiting in the event
    /// buffer) the pool shrinks back within two seconds; a steady load that
    /// cycles more blocks than the floor may see the extra ones released and
    /// made again, at most once a second each. Off the per-packet path: it
    /// only looks at the free lists' lengths. Returns the blocks released.
    pub fn trim_idle(&self) -> usize {
        let mut released = 0;
        for class in self.classes.iter() {
            let now = class.free_rx.len();
            let before = class.free_at_last_trim.swap(now, Relaxed);
            let idle = now.min(before).saturating_sub(SECPOOL_IDLE_FLOOR);
            if idle == 0 {
                continue;
            }
            // The list is first in, first out: the floor kept is its front
            // (the blocks longest there, made first, lowest in the heap),
            // moved to the back one at a time, so that no more than one
            // block is ever off the list; then the burst's, now in front,
            // go, and the allocator can give the top of its heap back.
            for _ in 0..SECPOOL_IDLE_FLOOR {
                let Ok(block) = class.free_rx.try_recv() else {
                    break;
                };
                if let Err(TrySendError::Full(block) | TrySendError::Disconnected(block)) =
                    class.free_tx.try_send(block)
                {
                    self.release_block(class, block);
                    released += 1;
                }
            }
            for _ in 0..idle {
                let Ok(block) = class.free_rx.try_recv() else {
                    break;
                };
                self.release_block(class, block);
                released += 1;
            }
            class.free_at_last_trim.store(class.free_rx.len(), Relaxed);
        }
        released
    }

    /// Drops a block of `class` that was counted in `bytes_held`.
    fn release_block(&self, class: &SizeClass, block: Box<[u8]>) {
        let size = block.len();
        drop(block);
        class.blocks_released.fetch_add(1, Relaxed);
        self.bytes_held.fetch_sub(size, Relaxed);
    }

    /// Gives one free block back to the system, largest class first (the most
    /// bytes per step). False when every free list is empty.
    fn release_idle_block(&self) -> bool {
        for class in self.classes.iter().rev() {
            if let Ok(block) = class.free_rx.try_recv() {
                let size = block.len();
                drop(block);
                class.blocks_released.fetch_add(1, Relaxed);
                self.bytes_held.fetch_sub(size, Relaxed);
                return true;
            }
        }
        false
    }

    /// Accounts `size` more bytes if that stays within the cap.
    fn reserve(&self, size: usize) -> bool {
        self.bytes_held
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(size)
                    .filter(|&total| total <= self.bytes_max)
            })
            .is_ok()
    }

    /// Bytes in blocks that exist now, in use or free.
    pub fn bytes_held(&self) -> usize {
        self.bytes_held.load(Relaxed)
    }

    /// The cap on [`Secpool::bytes_held`].
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// The largest block.
    pub fn block_size_max(&self) -> usize {
        self.block_size_max
    }

    /// Per-class counters (a snapshot; counters move while it is taken).
    pub fn stats(&self) -> Vec<ClassStats> {
        self.classes
            .iter()
            .map(|c| {
                let allocs = c.allocs.load(Relaxed);
                let frees = c.frees.load(Relaxed);
                ClassStats {
                    block_size: c.block_size,
                    allocs,
                    frees,
                    failures: c.failures.load(Relaxed),
                    blocks_created: c.blocks_created.load(Relaxed),
                    blocks_released: c.blocks_released.load(Relaxed),
                    blocks_in_use: allocs.saturating_sub(frees),
                    blocks_free: c.free_rx.len() as u64,
                }
            })
            .collect()
    }
}

/// A block from secpool, returned to its class when dropped. Derefs to the
/// bytes written so far (`len`), never to the rest of the block.
pub struct PoolBuf {
    /// Invariant: the length is the class's block size; empty only while
    /// `Drop` runs.
    block: Box<[u8]>,
    len: usize,
    pool: &'static Secpool,
}

impl PoolBuf {
    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's size: the most bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.block.len()
    }

    /// The whole block, to write into before [`PoolBuf::set_len`].
    pub fn block_mut(&mut self) -> &mut [u8] {
        &mut self.block
    }

    /// Sets how many bytes of the block are valid.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.block.len(), "PoolBuf::set_len past capacity");
        self.len = len;
    }

    /// The valid bytes, mutable (for decrypting in place).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.block[..self.len]
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.block[..self.len]
    }
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("len", &self.len)
            .field("capacity", &self.block.len())
            .finish()
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let block = std::mem::take(&mut self.block);
        self.pool.secpool_free(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_index_is_the_rounded_up_exponent() {
        let cases = [
            (0, 0),
            (1, 0),
            (16, 0),
            (17, 1),
            (32, 1),
            (33, 2),
            (64, 2),
            (65, 3),
            (1024, 6),
            (1025, 7),
            (65536, 12),
        ];
        for (n, class) in cases {
            assert_eq!(secpool_class_index(n), class, "{n} bytes");
            assert!(SECPOOL_BLOCK_SIZE_MIN << class >= n);
        }
        // Exhaustive over a range: the class is the smallest that fits.
        for n in 17..5000usize {
            let c = secpool_class_index(n);
            assert!(SECPOOL_BLOCK_SIZE_MIN << c >= n);
            assert!(SECPOOL_BLOCK_SIZE_MIN << (c - 1) < n);
        }
    }
}
