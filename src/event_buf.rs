//! The event buffer (thesis §3.4.2, `event_buf_t`): a blocking, bounded FIFO
//! queue between the I/O threads and the main thread.
//!
//! The thesis's API is kept: [`EventBuf::event_push`] pushes any number of
//! events and *blocks while the buffer is full*, pushing more than the capacity
//! in chunks as space opens; [`EventBuf::event_wait`] sleeps until events arrive
//! or the timeout elapses and returns up to `max` of them in FIFO order. The
//! blocking push is what bounds memory: an I/O thread cannot outrun the main
//! thread by more than the capacity (§3.4.4).
//!
//! Two changes from the C code, both suggested or implied by the thesis:
//! - the storage is a ring buffer (`VecDeque`, never grown past its capacity)
//!   instead of an array compacted with `memmove` after every pop — the
//!   thesis's own "performance could potentially be increased" note;
//! - [`EventBuf::close`] wakes every waiter for shutdown: pushes fail with
//!   [`Closed`], and waits return what is left, then [`Closed`].
//!
//! The same type carries the main thread's commands to the I/O threads; they
//! use [`EventBuf::try_push`], which never blocks.
//!
//! One mutex guards the ring (the thesis's `write_mutex`); `read_cond` wakes the
//! consumer when events arrive (`read_cond_var`), `write_cond` wakes producers
//! when space opens (`write_cond_var`). No `unsafe`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The buffer was closed; no more events will be accepted or delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("event buffer closed")
    }
}

impl std::error::Error for Closed {}

/// Why [`EventBuf::try_push`] refused an event; the event is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum TryPushError<T> {
    /// The buffer is at capacity.
    Full(T),
    /// The buffer was closed.
    Closed(T),
}

/// A blocking, bounded, multi-producer FIFO of `T` (thesis `event_buf_t`).
pub struct EventBuf<T> {
    /// The thesis's `write_mutex` and what it guards.
    ring: Mutex<Ring<T>>,
    /// Signalled when events are pushed (thesis `read_cond_var`).
    read_cond: Condvar,
    /// Signalled when events are popped (thesis `write_cond_var`).
    write_cond: Condvar,
    /// Most events the ring holds (thesis `max_events`).
    capacity: usize,
}

struct Ring<T> {
    /// Invariant: `events.len() <= capacity`; the deque never reallocates after
    /// `EventBuf::new`.
    events: VecDeque<T>,
    closed: bool,
    /// `event_push` calls that found the buffer full and waited (counted
    /// under the lock the push holds anyway; read by the metrics).
    push_waits: u64,
}

impl<T> fmt::Debug for EventBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.lock();
        f.debug_struct("EventBuf")
            .field("len", &ring.events.len())
            .field("capacity", &self.capacity)
            .field("closed", &ring.closed)
            .finish()
    }
}

impl<T> EventBuf<T> {
    /// Creates a buffer that holds up to `capacity` events (thesis
    /// `event_init(buf, sizeof(event_t), max)`; the item size is the type).
    ///
    /// # Panics
    /// If `capacity` is 0: a zero-capacity blocking queue could never accept.
    pub fn new(capacity: usize) -> EventBuf<T> {
        assert!(capacity > 0, "event buffer capacity must be at least 1");
        EventBuf {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity),
                closed: false,
                push_waits: 0,
            }),
            read_cond: Condvar::new(),
            write_cond: Condvar::new(),
            capacity,
        }
    }

    /// Most events the buffer holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events waiting right now (a snapshot).
    pub fn len(&self) -> usize {
        self.ring.lock().events.len()
    }

    /// True when no events are waiting (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once [`EventBuf::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.ring.lock().closed
    }

    /// Pushes every event of `evs` in order (thesis `event_push`). Blocks while
    /// the buffer is full; a batch larger than the free space goes in chunks,
    /// the lock released between them so the consumer can drain.
    ///
    /// Returns [`Closed`] if the buffer is or becomes closed; events not yet
    /// pushed are dropped (after the lock is released).
    pub fn event_push<I>(&self, evs: I) -> Result<(), Closed>
    where
        I: IntoIterator<Item = T>,
    {
        let mut evs = evs.into_iter().peekable();
        if evs.peek().is_none() {
            return Ok(());
        }
        let mut ring = self.ring.lock();
        let mut waited = false;
        loop {
            if ring.closed {
                drop(ring);
                return Err(Closed);
            }
            let space = self.capacity - ring.events.len();
            if space == 0 {
                if !waited {
                    waited = true;
                    ring.push_waits += 1;
                }
                self.write_cond.wait(&mut ring);
                continue;
            }
            for _ in 0..space {
                match evs.next() {
                    Some(ev) => ring.events.push_back(ev),
                    None => break,
                }
            }
            debug_assert!(ring.events.len() <= self.capacity);
            let done = evs.peek().is_none();
            if done {
                drop(ring);
                self.read_cond.notify_all();
                return Ok(());
            }
            // A chunk went in and more remain: wake the consumer, then wait for
            // it to make space (the wait releases the lock).
            self.read_cond.notify_all();
        }
    }

    /// `event_push` calls so far that found the buffer full and waited for
    /// the consumer.
    pub fn push_waits(&self) -> u64 {
        self.ring.lock().push_waits
    }

    /// Pushes one event without blocking. For queues whose bound is proven
    /// elsewhere (the main thread's commands to the I/O threads), so `Full`
    /// means a broken invariant rather than load.
    pub fn try_push(&self, ev: T) -> Result<(), TryPushError<T>> {
        let mut ring = self.ring.lock();
        if ring.closed {
            return Err(TryPushError::Closed(ev));
        }
        if ring.events.len() == self.capacity {
            return Err(TryPushError::Full(ev));
        }
        ring.events.push_back(ev);
        drop(ring);
        self.read_cond.notify_all();
        Ok(())
    }

    /// Waits for events and moves up to `max` of them, oldest first, to the end
    /// of `out` (thesis `event_wait`). `timeout_ms` is how long to sleep while
    /// the buffer is empty: -1 ([`crate::com::FOREVER`]) sleeps until events
    /// arrive, 0 does not sleep.
    ///
    /// Returns the number of events moved: 0 means the timeout elapsed. After
    /// [`EventBuf::close`] the remaining events are still delivered; once none
    /// are left the result is [`Closed`].
    pub fn event_wait(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout_ms: i32,
    ) -> Result<usize, Closed> {
        let mut ring = self.ring.lock();
        if ring.events.is_empty() && !ring.closed && timeout_ms != 0 {
            if timeout_ms < 0 {
                self.read_cond
                    .wait_while(&mut ring, |r| r.events.is_empty() && !r.closed);
            } else {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
                self.read_cond.wait_while_until(
                    &mut ring,
                    |r| r.events.is_empty() && !r.closed,
                    deadline,
                );
            }
        }
        if ring.events.is_empty() {
            return if ring.closed { Err(Closed) } else { Ok(0) };
        }
        let n = max.min(ring.events.len());
        out.extend(ring.events.drain(..n));
        drop(ring);
        self.write_cond.notify_all();
        Ok(n)
    }

    /// Closes the buffer and wakes every thread waiting in it (port decision,
    /// for shutdown). Idempotent.
    pub fn close(&self) {
        self.ring.lock().closed = true;
        self.read_cond.notify_all();
        self.write_cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::com::FOREVER;

    #[test]
    fn chunks_never_exceed_capacity() {
        let buf = EventBuf::new(3);
        let mut out = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| buf.event_push(0..10).unwrap());
            let mut seen = 0;
            while seen < 10 {
                let n = buf.event_wait(&mut out, 2, FOREVER).unwrap();
                assert!((1..=2).contains(&n));
                assert!(buf.len() <= 3);
                seen += n;
            }
        });
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn try_push_hands_the_event_back() {
        let buf = EventBuf::new(1);
        buf.try_push(1).unwrap();
        assert_eq!(buf.try_push(2), Err(TryPushError::Full(2)));
        buf.close();
        assert_eq!(buf.try_push(3), Err(TryPushError::Closed(3)));
    }
}
