//! The common module (thesis §3.5.1, prefix `com`): the typed events that the
//! I/O threads post to the main thread (§3.4.2), the reference that names a
//! connection across threads, and a few shared constants.
//!
//! The thesis keeps its events in a C union tagged by `type`
//! (`EVENT_READ_SHARD`, `EVENT_ACCEPT_CLIENT`, `EVENT_READ_CLIENT`); here that
//! union is the enum [`Event`]. One set of variants serves both I/O threads,
//! because both run the same connection layer ([`crate::conn`]); the
//! [`PoolId`] in each [`ConnRef`] says which thread and pool an event is
//! about, and [`Event::name`] gives the thesis's name (`EVENT_READ_CLIENT` for
//! a read on the client thread, `EVENT_READ_SHARD` on the shard thread). The
//! connect, disconnect and write-readiness events are the ones the design
//! needs beyond the thesis's three (each marked **port decision** in
//! `docs/thesis-map.md`).
//!
//! This module is a leaf: it depends on nothing else in the crate except the
//! event buffer's type and the pool handle that carries event data.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event_buf::EventBuf;
use crate::secpool::PoolBuf;

/// A `timeout_ms` of -1 means "wait forever", as in the thesis's
/// `netpoll_wait()` and `event_wait()`.
pub const FOREVER: i32 = -1;

/// The main thread's event buffer (`com_event_buf` in the thesis).
pub type ComEventBuf = EventBuf<Event>;

/// Which of the thesis's two I/O threads, and so which connection pool of the
/// main thread, a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolId {
    /// The client thread (thesis §3.5.2): listeners and what they accept.
    Client,
    /// The shard thread (thesis §3.5.3): connections the program opens.
    Shard,
}

impl PoolId {
    /// The thread's name, and the word in the thesis's event names.
    pub fn name(self) -> &'static str {
        match self {
            PoolId::Client => "client",
            PoolId::Shard => "shard",
        }
    }
}

/// One connection as every thread names it: its pool, the slot index in that
/// pool, and the 32-bit id the slot was given when it was last taken (thesis
/// §3.5.2 `client_index`, `client_id`).
///
/// Slots are reused; ids are not (until 2^32 connections later), so an event
/// that names a reused slot with an old id is recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    /// The pool (and I/O thread) of the connection.
    pub pool: PoolId,
    /// Index into the pool's fixed table of slots.
    pub index: u32,
    /// The id the slot carries while this connection owns it (its generation).
    pub id: u32,
}

/// Netpoll data words at the top of the 64-bit range are reserved for
/// non-connection sources (listeners, signal pipes, the waker); connection
/// data words (`id << 32 | index`) never reach them because an index is
/// always below [`crate::config::MAX_CLIENTS_LIMIT`].
pub const NETPOLL_DATA_RESERVED_MIN: u64 = u64::MAX - 255;

impl ConnRef {
    /// Packs the slot and id into a netpoll data word: the id in the high 32
    /// bits. The pool is not stored: each I/O thread polls one pool only.
    pub fn to_data(self) -> u64 {
        let data = (u64::from(self.id) << 32) | u64::from(self.index);
        debug_assert!(data < NETPOLL_DATA_RESERVED_MIN);
        data
    }

    /// Unpacks a data word made by [`Self::to_data`] on `pool`'s thread.
    pub fn from_data(pool: PoolId, data: u64) -> Self {
        Self {
            pool,
            index: data as u32,
            id: (data >> 32) as u32,
        }
    }
}

impl fmt::Display for ConnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pool.name(), self.index)
    }
}

/// Why an I/O thread stopped reading a connection, or never opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HupReason {
    /// The peer closed its side (read returned 0).
    Eof,
    /// A socket error.
    Error(io::ErrorKind),
    /// The read succeeded but secpool had no block for it. Cannot happen with a
    /// configuration that passes `--check-config` (see `config::Config::secpool_bytes_needed`);
    /// handled anyway by dropping that one connection.
    PoolExhausted,
    /// An outbound connection could not be made (every address refused it,
    /// or its name did not resolve).
    ConnectFailed(io::ErrorKind),
    /// An outbound connection was not made before its deadline.
    ConnectTimeout,
}

/// How a connection the kernel gave up on is logged, whether its read or
/// its write saw it first (`ETIMEDOUT`: only the TCP stack's own timers give
/// it on a connected socket).
pub const STALL_TEXT: &str = "timed out: the peer took none of its data (acknowledged nothing, \
     or kept its window shut) past the TCP user timeout, keepalive or the kernel's retries";

impl HupReason {
    /// The kernel gave up on a peer that stopped taking data: a rule broken
    /// (logged as one), not an ordinary end.
    pub fn is_stall(&self) -> bool {
        matches!(self, HupReason::Error(io::ErrorKind::TimedOut))
    }
}

impl fmt::Display for HupReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HupReason::Eof => f.write_str("closed by peer"),
            HupReason::Error(io::ErrorKind::TimedOut) => f.write_str(STALL_TEXT),
            HupReason::Error(kind) => write!(f, "socket error: {kind}"),
            HupReason::PoolExhausted => f.write_str("secpool exhausted"),
            HupReason::ConnectFailed(kind) => write!(f, "{kind}"),
            HupReason::ConnectTimeout => f.write_str("no answer before the connect deadline"),
        }
    }
}

/// A typed event posted by an I/O thread to the main thread (thesis
/// `event_t`). Events that carry bytes own a [`PoolBuf`]; the handler that
/// consumes the event returns the block to secpool by dropping it.
#[derive(Debug)]
pub enum Event {
    /// `EVENT_ACCEPT_CLIENT` (thesis): a listener accepted a connection. The
    /// main thread decides whether it gets a slot (`cl_accept`).
    Accepted {
        /// The pool of the thread that accepted it.
        pool: PoolId,
        /// Which listener (index in the list given to the thread).
        listener: u32,
        /// The accepted, non-blocking socket.
        stream: mio::net::TcpStream,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// `EVENT_CONNECT_SHARD` (port decision): an outbound connection the main
    /// thread asked for is established (thesis §3.8.1); the main thread takes
    /// the write side.
    Connected {
        /// The connection.
        conn: ConnRef,
        /// The connected, non-blocking socket, shared with the I/O thread.
        stream: Arc<mio::net::TcpStream>,
        /// The address it reached.
        peer: SocketAddr,
    },
    /// `EVENT_READ_CLIENT`, `EVENT_READ_SHARD` (thesis): bytes read from a
    /// connection, in a secpool block.
    Read {
        /// The connection.
        conn: ConnRef,
        /// The bytes.
        data: PoolBuf,
    },
    /// `EVENT_WRITABLE_*` (port decision): a connection whose output could
    /// not all be written can take more. Sent once per `WantWrite` command.
    Writable {
        /// The connection.
        conn: ConnRef,
    },
    /// `EVENT_HUP_*` (port decision): the I/O thread stopped reading a
    /// connection (peer closed, socket error) or could not open it. The main
    /// thread disconnects it.
    Hup {
        /// The connection.
        conn: ConnRef,
        /// Why.
        reason: HupReason,
    },
    /// `EVENT_CLOSED_*` (port decision): the I/O thread has dropped its
    /// handle to the socket after a `Del` command, so the slot may be reused.
    Closed {
        /// The connection.
        conn: ConnRef,
    },
    /// `EVENT_SIGNAL` (port decision): SIGINT, SIGTERM or SIGHUP arrived.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// `EVENT_JOB_DONE` (port decision): work the server gave the runtime to
    /// do off the main thread (reading the configuration files on SIGHUP)
    /// is done; its result, for the server to take apart.
    JobDone {
        /// What the job returned.
        result: Box<dyn std::any::Any + Send>,
    },
}

impl Event {
    /// The event's name in the thesis's style, for logs and counters.
    pub fn name(&self) -> &'static str {
        let pool = match self {
            Event::Accepted { pool, .. } => *pool,
            Event::Connected { conn, .. }
            | Event::Read { conn, .. }
            | Event::Writable { conn }
            | Event::Hup { conn, .. }
            | Event::Closed { conn } => conn.pool,
            Event::Signal { .. } => return "EVENT_SIGNAL",
            Event::JobDone { .. } => return "EVENT_JOB_DONE",
        };
        let client = pool == PoolId::Client;
        match self {
            Event::Accepted { .. } if client => "EVENT_ACCEPT_CLIENT",
            Event::Accepted { .. } => "EVENT_ACCEPT_SHARD",
            Event::Connected { .. } if client => "EVENT_CONNECT_CLIENT",
            Event::Connected { .. } => "EVENT_CONNECT_SHARD",
            Event::Read { .. } if client => "EVENT_READ_CLIENT",
            Event::Read { .. } => "EVENT_READ_SHARD",
            Event::Writable { .. } if client => "EVENT_WRITABLE_CLIENT",
            Event::Writable { .. } => "EVENT_WRITABLE_SHARD",
            Event::Hup { .. } if client => "EVENT_HUP_CLIENT",
            Event::Hup { .. } => "EVENT_HUP_SHARD",
            Event::Closed { .. } if client => "EVENT_CLOSED_CLIENT",
            Event::Closed { .. } => "EVENT_CLOSED_SHARD",
            Event::Signal { .. } => "EVENT_SIGNAL",
            Event::JobDone { .. } => "EVENT_JOB_DONE",
        }
    }
}

/// Lets a log line through at most once per period, counting the ones it
/// holds back, so a flood of bad input cannot become a flood of log lines
/// (and a main thread blocked on a slow log sink).
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(n)` if a line may be logged now, `n` being how many were held
    /// back since the last one; `None` (and one more held back) otherwise.
    pub fn allow(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The name of a signal the programs handle (SIGINT, SIGTERM), for their log
/// line.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// True for the error a non-blocking socket returns when it has nothing to give.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// True for a system call interrupted by a signal, to be retried.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_word_round_trips_and_stays_below_reserved_range() {
        let c = ConnRef {
            pool: PoolId::Client,
            index: 999_999,
            id: u32::MAX,
        };
        let data = c.to_data();
        assert!(data < NETPOLL_DATA_RESERVED_MIN);
        assert_eq!(ConnRef::from_data(PoolId::Client, data), c);
        let s = ConnRef {
            pool: PoolId::Shard,
            index: 3,
            id: 7,
        };
        assert_eq!(ConnRef::from_data(PoolId::Shard, s.to_data()), s);
    }

    #[test]
    fn event_names_follow_the_thesis() {
        let conn = |pool| ConnRef {
            pool,
            index: 0,
            id: 1,
        };
        let hup = |pool| Event::Hup {
            conn: conn(pool),
            reason: HupReason::Eof,
        };
        assert_eq!(hup(PoolId::Client).name(), "EVENT_HUP_CLIENT");
        assert_eq!(hup(PoolId::Shard).name(), "EVENT_HUP_SHARD");
        assert_eq!(Event::Signal { signal: 15 }.name(), "EVENT_SIGNAL");
    }
}
