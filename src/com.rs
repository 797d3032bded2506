//! The common module (thesis §3.5.1, prefix `com`): the typed events that the
//! I/O threads post to the main thread (§3.4.2), the ids that name clients and
//! shard connections across threads, and a few shared constants.
//!
//! The thesis keeps its events in a C union tagged by `type`
//! (`EVENT_READ_SHARD`, `EVENT_ACCEPT_CLIENT`, `EVENT_READ_CLIENT`); here that
//! union is the enum [`Event`]. The thesis's three events are kept under their
//! names; the others are the connect, disconnect and write-readiness events the
//! design needs (each marked **port decision** in `docs/thesis-map.md`).
//!
//! This module is a leaf: it depends on nothing else in the crate except the
//! pool handle that carries event data.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::event_buf::EventBuf;
use crate::secpool::PoolBuf;

/// A `timeout_ms` of -1 means "wait forever", as in the thesis's
/// `netpoll_wait()` and `event_wait()`.
pub const FOREVER: i32 = -1;

/// The main thread's event buffer (`com_event_buf` in the thesis).
pub type ComEventBuf = EventBuf<Event>;

/// One client connection as both threads name it: the slot index in the
/// client pool and the 32-bit id the slot was given when it was last taken
/// (thesis §3.5.2 `client_index`, `client_id`).
///
/// Slots are reused; ids are not (until 2^32 connections later), so an event
/// that names a reused slot with an old id is recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientRef {
    /// Index into the fixed client pool.
    pub index: u32,
    /// The id the slot carries while this connection owns it.
    pub id: u32,
}

/// One connection to one shard: the shard's line in `shards.cfg` (0-based) and
/// the number of the connection, which grows by one on every reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardRef {
    /// Index of the shard in `shards.cfg` order.
    pub index: u32,
    /// Which connection to that shard this is (1 for the first).
    pub conn_id: u32,
}

/// Netpoll data words at the top of the 64-bit range are reserved for
/// non-connection sources; connection data words (`id << 32 | index`) never
/// reach them because an index is always below [`crate::config::MAX_CLIENTS_LIMIT`].
pub const NETPOLL_DATA_RESERVED_MIN: u64 = u64::MAX - 255;

macro_rules! packed_ref {
    ($ty:ident, $hi:ident) => {
        impl $ty {
            /// Packs the pair into a netpoll data word: the id in the high 32 bits.
            pub fn to_data(self) -> u64 {
                let data = (u64::from(self.$hi) << 32) | u64::from(self.index);
                debug_assert!(data < NETPOLL_DATA_RESERVED_MIN);
                data
            }

            /// Unpacks a data word made by [`Self::to_data`].
            pub fn from_data(data: u64) -> Self {
                Self {
                    index: data as u32,
                    $hi: (data >> 32) as u32,
                }
            }
        }
    };
}
packed_ref!(ClientRef, id);
packed_ref!(ShardRef, conn_id);

/// Why an I/O thread stopped reading a connection.
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
}

impl std::fmt::Display for HupReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HupReason::Eof => f.write_str("closed by peer"),
            HupReason::Error(kind) => write!(f, "socket error: {kind}"),
            HupReason::PoolExhausted => f.write_str("secpool exhausted"),
        }
    }
}

/// A typed event posted by an I/O thread to the main thread (thesis
/// `event_t`). Events that carry bytes own a [`PoolBuf`]; the handler that
/// consumes the event returns the block to secpool by dropping it.
#[derive(Debug)]
pub enum Event {
    /// `EVENT_ACCEPT_CLIENT` (thesis): the client thread accepted a connection.
    /// The main thread decides whether it gets a slot (`cl_accept`).
    AcceptClient {
        /// Which listener accepted it (index in the list given to `cl_start`).
        listener: u32,
        /// The accepted, non-blocking socket.
        stream: mio::net::TcpStream,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// `EVENT_READ_CLIENT` (thesis): bytes read from a client.
    ReadClient {
        /// Which client.
        client: ClientRef,
        /// The bytes, in a secpool block.
        data: PoolBuf,
    },
    /// `EVENT_WRITABLE_CLIENT` (port decision): a client whose output could not
    /// all be written can take more. Sent once per `WantWrite` command.
    ClientWritable {
        /// Which client.
        client: ClientRef,
    },
    /// `EVENT_HUP_CLIENT` (port decision): the client thread stopped reading a
    /// client (peer closed, socket error). The main thread disconnects it.
    ClientHup {
        /// Which client.
        client: ClientRef,
        /// Why.
        reason: HupReason,
    },
    /// `EVENT_CLOSED_CLIENT` (port decision): the client thread has dropped its
    /// handle to the socket after a `Del` command, so the slot may be reused.
    ClientClosed {
        /// Which client.
        client: ClientRef,
    },
    /// `EVENT_CONNECT_SHARD` (port decision): the shard thread connected to a
    /// shard (thesis §3.8.1); the main thread takes the write side.
    ShardConnected {
        /// Which shard connection.
        shard: ShardRef,
        /// The connected, non-blocking socket, shared with the shard thread.
        stream: Arc<mio::net::TcpStream>,
    },
    /// `EVENT_READ_SHARD` (thesis): bytes read from a shard.
    ReadShard {
        /// Which shard connection.
        shard: ShardRef,
        /// The bytes, in a secpool block.
        data: PoolBuf,
    },
    /// `EVENT_WRITABLE_SHARD` (port decision): as [`Event::ClientWritable`].
    ShardWritable {
        /// Which shard connection.
        shard: ShardRef,
    },
    /// `EVENT_HUP_SHARD` (port decision): a shard connection was lost; the shard
    /// thread will reconnect after `shard.connect_retry_ms`.
    ShardHup {
        /// Which shard connection.
        shard: ShardRef,
        /// Why.
        reason: HupReason,
    },
    /// `EVENT_SIGNAL` (port decision): SIGINT or SIGTERM arrived.
    Signal {
        /// The signal number.
        signal: i32,
    },
}

impl Event {
    /// The event's name in the thesis's style, for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Event::AcceptClient { .. } => "EVENT_ACCEPT_CLIENT",
            Event::ReadClient { .. } => "EVENT_READ_CLIENT",
            Event::ClientWritable { .. } => "EVENT_WRITABLE_CLIENT",
            Event::ClientHup { .. } => "EVENT_HUP_CLIENT",
            Event::ClientClosed { .. } => "EVENT_CLOSED_CLIENT",
            Event::ShardConnected { .. } => "EVENT_CONNECT_SHARD",
            Event::ReadShard { .. } => "EVENT_READ_SHARD",
            Event::ShardWritable { .. } => "EVENT_WRITABLE_SHARD",
            Event::ShardHup { .. } => "EVENT_HUP_SHARD",
            Event::Signal { .. } => "EVENT_SIGNAL",
        }
    }
}

/// Lets a log line through at most once per period, counting the ones it
/// holds back, so a flood of bad input cannot become a flood of log lines
/// (and a main thread blocked on a slow log sink).
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(n)` if a line may be logged now, `n` being how many were held
    /// back since the last one; `None` (and one more held back) otherwise.
    pub fn allow(&mut self, now: std::time::Instant, every: std::time::Duration) -> Option<u64> {
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
        let c = ClientRef {
            index: 999_999,
            id: u32::MAX,
        };
        let data = c.to_data();
        assert!(data < NETPOLL_DATA_RESERVED_MIN);
        assert_eq!(ClientRef::from_data(data), c);
        let s = ShardRef {
            index: 3,
            conn_id: 7,
        };
        assert_eq!(ShardRef::from_data(s.to_data()), s);
    }
}
